"""Move legacy session keys out of the way, under archive:."""


def up(ctx):
    for key, value in ctx.scan(prefix=b"legacy:"):
        ctx.delete(key)
        ctx.put(b"archive:" + key, value)


def down(ctx):
    for key, value in ctx.scan(prefix=b"archive:legacy:"):
        ctx.delete(key)
        ctx.put(key[len(b"archive:") :], value)
