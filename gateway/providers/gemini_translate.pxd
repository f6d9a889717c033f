# Compiles this module from its own source (SOURCE_MODULES; the .py is its own twin): no class of it is
# an extension type, its functions run compiled (see docs/architecture.md, "What is compiled").
