"""Index users by email."""

import json

dependencies = ["1700000000_split_names"]


def up(ctx):
    for key, value in ctx.scan(prefix=b"user:"):
        email = json.loads(value)["email"]
        ctx.put(b"email:" + email.encode(), key)


def down(ctx):
    for key, _ in ctx.scan(prefix=b"email:"):
        ctx.delete(key)


def validate(ctx):
    users = sum(1 for _ in ctx.scan(prefix=b"user:", name="users"))
    emails = sum(1 for _ in ctx.scan(prefix=b"email:", name="emails"))
    return [] if users == emails else [f"{users} users but {emails} email keys"]
