"""`nextscale sample` (being written)."""


def add_parser(sub):
    p = sub.add_parser("sample", help="(being written)")
    p.set_defaults(run=lambda args: 0)
