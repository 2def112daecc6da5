-- Which copy of the log a cursor is in: the hash of the file's first line. A log that is
-- shorter than the cursor was taken for one truncated (copytruncate, `: > file`), and read
-- again from its start; but after a power cut the same log is shorter too (Postfix never syncs
-- it, the kernel had not written its end), and reading it again counted every line of months
-- a second time. With the first line kept, the two are told apart, and a truncation is seen
-- even when the file has grown past the cursor again (app/jobs/ingest.py, _read_next).
-- IF NOT EXISTS: a database of the old chain runs the migrations after the baseline again.
ALTER TABLE log_cursors ADD COLUMN IF NOT EXISTS head text NOT NULL DEFAULT '';
