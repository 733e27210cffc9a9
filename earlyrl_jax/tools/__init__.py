"""Commands that sit above models/ and train/ (converters)."""
