"""Thin argparse command lines of mgpath (parse, call, print)."""
