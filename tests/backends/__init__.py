"""Tests of the device backends."""
