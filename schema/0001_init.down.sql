-- Undo 0001_init. This fails while a trigger still uses set_updated_at():
-- roll back the migration that created that trigger first.
DROP FUNCTION set_updated_at();
