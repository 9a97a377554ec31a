"""Training data: rows read from files or the Hub, converted per format, tokenized and checked, previewed."""
