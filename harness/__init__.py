"""What tests, benchmarks and the user's tools share: the real Cog server on 127.0.0.1 (`server`),
deterministic test images (`images`), and the tag-placement pass with its op counter
(`injection`). Imports the model; the model never imports it."""
