"""A read-only web console and JSON read API over a matcher's gallery and its live events."""
