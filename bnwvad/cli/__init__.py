"""Thin click command-line front ends over the library (bnwvad-train, bnwvad-eval)."""
