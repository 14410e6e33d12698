"""Where results are kept: the results store (SQLite or PostgreSQL), its schema, ``--store``
locations, and archives that carry finished cells from one machine to another."""
