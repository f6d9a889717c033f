"""Wire schemas of each provider, apart from the translation logic (msgspec Structs, decoders built once)."""
