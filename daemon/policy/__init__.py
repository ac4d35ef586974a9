"""Pure policies: observations + state + config + now in, decisions out. No I/O here."""
