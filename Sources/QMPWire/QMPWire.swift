// QMP framing; see docs/ADMIN.md.
