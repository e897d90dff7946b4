"""The capture journal (SQLite), crash recovery and the storage guard."""
