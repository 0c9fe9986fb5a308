"""Speculative decoding: drafts proposed from the request's own context, verified in one forward."""
