"""Orders: validation, references, the order book, the desk that places them, relay handlers, order files."""
