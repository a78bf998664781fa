-- A run's method and its ablation and sweep values as data, written when the experiment is
-- expanded, so that no reader parses run names (`m3@losses.preservation=1`) or re-reads a
-- run's YAML for them. Runs stored before this migration are filled in once, here, from their
-- names and configs.
ALTER TABLE runs ADD COLUMN method TEXT;
ALTER TABLE runs ADD COLUMN params JSONB NOT NULL DEFAULT '{}'::jsonb;

UPDATE runs SET method = substring(config FROM '(?n)^method:\s*([A-Za-z0-9_-]+)')
 WHERE config ~ '(?n)^method:';

UPDATE runs SET params = coalesce(
    (SELECT jsonb_object_agg(split_part(kv, '=', 1), substr(kv, strpos(kv, '=') + 1))
       FROM unnest(string_to_array(split_part(name, '@', 2), ',')) AS kv
      WHERE strpos(kv, '=') > 0),
    '{}'::jsonb)
 WHERE strpos(name, '@') > 0;
