"""Local stand-ins for Apple's, Google's and browsers' push services, over HTTP/2 and TLS.

They verify what the real services verify (JWT signatures and claims, headers, payload
size, that a Web Push payload decrypts) and count what they accept per token, so the
demo and the tests can check every device got its push exactly once. ``answers`` makes
one answer what a real service answers when things go wrong (410, 429, 503 …).
"""
