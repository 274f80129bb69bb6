"""Self-service accounts: keys with budgets, usage rollups, payments (Stripe), alerts."""
