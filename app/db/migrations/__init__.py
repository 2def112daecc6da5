"""The committed migrations of the `mailrelay` Piccolo app, and the error one raises when it
must not change the database it found."""


class MigrationRefused(Exception):
    """A migration found the database in a state it must not change; it changed nothing, and
    the message says what to do. `mailrelay migrate` shows the message as its one-line error."""
