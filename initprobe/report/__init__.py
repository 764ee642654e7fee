"""Tables and figures drawn from the shared long-form schema."""
