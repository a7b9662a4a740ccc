"""The hub appliance (SHA): repository, job database, NBD exports, API on 8082."""
