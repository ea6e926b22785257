"""One module per schema revision, oldest first: 0001 is the schema before migrations existed.

Revisions only upgrade: a database made by an older gptdash is moved forward in
place, never dropped, and gptdash has no command that moves one back.
"""
