-- The read cache loads a viewer's recent likes (newest posts first) to answer `liked`
-- for a feed page without a query per page.
CREATE INDEX likes_user_idx ON likes (user_id, post_id DESC);
