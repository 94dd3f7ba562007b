"""Tables: written by the resource owner."""
