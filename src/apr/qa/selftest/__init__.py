"""`apr qa --self-test`: the gates' detection power, measured on planted defects (see docs/self-test.md)."""
