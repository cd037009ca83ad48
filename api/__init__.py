"""HTTP surface: app factory, route handlers per capability, guards, middleware, error mapping."""
