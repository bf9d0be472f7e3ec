"""Running a plan: the scheduler (dependency order, caching, retries, the single database writer), artifact
bytes on disk (artifacts), and --until-settled's rounds of added seeds (rounds)."""
