"""Routers contributed by other packages (fine-tuning: feedback, retune, adapters); each module exports `router`."""
