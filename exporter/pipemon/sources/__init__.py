"""The source kinds, one module each; `pipemon.kinds` registers them."""
