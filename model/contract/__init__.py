"""The request as Replicate's runwayml/gen4-image defines it: tables, validation, @tag parsing,
reference decoding. Pure: no torch; imports nothing from the other layers."""
