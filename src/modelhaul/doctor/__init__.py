"""Checks of everything a download depends on."""
