"""The envelope: schema, validation (every problem at once), JSON I/O and starter envelopes."""
