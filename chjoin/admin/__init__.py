"""chjoinctl: the admin tool (check, ps, gc, spank, prolog, epilog), on click.

It imports the launcher's modules; none of them imports it, and no rank ever loads click
(tests/system/test_startup.py checks both).
"""
