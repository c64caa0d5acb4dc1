"""Operations on existing disk images, done offline through libguestfs.

An image is inspected without booting it and without trusting it: drives are
added read-only with an explicit format, and everything is read from the
image itself (its manifest, its store), never from host state.
"""
