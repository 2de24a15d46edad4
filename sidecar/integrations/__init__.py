"""Small adapters for frameworks, imported only by apps that use them."""
