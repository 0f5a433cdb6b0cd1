-- Undo 0002_treatments: the table, its index and its trigger.
DROP TABLE treatments;
