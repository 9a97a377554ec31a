"""Memory plans before launch: the model's shape (from its config or weight headers) and what training it costs."""
