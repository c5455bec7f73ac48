"""Card content as data; installed as the package data of ``service.cards`` (see README.md here)."""
