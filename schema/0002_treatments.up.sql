-- 0002_treatments: the spa's treatment menu (treatments.go). Every rule the
-- API checks is a constraint here too, so that no other path can store what
-- the API would refuse. Constraints are named TABLE_COLUMN_KIND: db.go reads
-- the column back out of the name to say which field a violation is about.
CREATE TABLE treatments (
    id               uuid PRIMARY KEY,
    name             text NOT NULL,
    description      text NOT NULL DEFAULT '',
    duration_minutes integer NOT NULL,
    price            bigint NOT NULL,
    currency         char(3) NOT NULL DEFAULT 'VND',
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT treatments_name_check
        CHECK (char_length(name) BETWEEN 1 AND 120 AND name !~ '^[[:space:]]|[[:space:]]$'),
    CONSTRAINT treatments_description_check
        CHECK (char_length(description) <= 2000),
    CONSTRAINT treatments_duration_minutes_check
        CHECK (duration_minutes BETWEEN 5 AND 480 AND duration_minutes % 5 = 0),
    CONSTRAINT treatments_price_check
        CHECK (price >= 0),
    CONSTRAINT treatments_currency_check
        CHECK (currency ~ '^[A-Z]{3}$')
);

-- Names are unique whatever their case, and the menu is listed in this
-- order: a page starts where the last one ended, at the cost of page one.
CREATE UNIQUE INDEX treatments_name_key ON treatments (lower(name));

CREATE TRIGGER treatments_set_updated_at BEFORE UPDATE ON treatments
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
