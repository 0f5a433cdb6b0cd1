-- 0001_init: the base every later migration builds on. It creates no tables:
-- each domain brings its own, in its own migration.

-- set_updated_at keeps a table's updated_at column current on every UPDATE.
-- A table with an updated_at column attaches it once:
--   CREATE TRIGGER clients_set_updated_at BEFORE UPDATE ON clients
--       FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION set_updated_at() IS
    'BEFORE UPDATE trigger: sets NEW.updated_at to the transaction time';
