"""Reading and writing: atomic files, the Hub, and the one reader of corpora and inputs."""
