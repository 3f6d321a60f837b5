"""The sections of bench.py, one module each, in the order bench.py runs them: machine, scaling, raw, skopeo,
docker, requests, acl, metrics, floods, rss (--skip pulls), listing, gc. Each has one entry point,
measure(ctx) (ctx: common.Context), that adds its figures to ctx.results; its docstring says what it measures
and how.

A package, so that these names (requests, gc, ...) never shadow a top-level module."""
