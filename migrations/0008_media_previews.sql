-- Previews of images for feeds (socialhub/services/previews.py): WebP copies at a few
-- widths, each an object of the media store under a key of its own, and a blurhash.
--
-- previews_pending: the preview worker is to make them (the image was too large to do in
-- the request); it is the durable record of that work, written in the post's
-- transaction, so a process that dies first leaves it for the worker of any instance.
-- previews_claimed_at: a worker's lease on it (a lapsed lease is taken again).
ALTER TABLE media
    ADD COLUMN blurhash            text,
    ADD COLUMN previews_pending    boolean NOT NULL DEFAULT false,
    ADD COLUMN previews_claimed_at timestamptz;

CREATE INDEX media_previews_pending_idx ON media (id) WHERE previews_pending;

-- A row per preview: the janitor's orphan sweep knows these keys by it, and deleting a
-- post (cascading to its media) leaves their objects to be deleted with the post's own.
CREATE TABLE media_previews (
    storage_key text PRIMARY KEY,
    media_id    bigint NOT NULL REFERENCES media (id) ON DELETE CASCADE,
    width       integer NOT NULL,
    height      integer NOT NULL
);
CREATE INDEX media_previews_media_idx ON media_previews (media_id, width);
