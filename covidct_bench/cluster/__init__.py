"""Running on a Ray cluster: the cluster launcher's commands (``launcher``) and a multi-node cluster on
one machine for trying the same path without a cloud (``local``). Ray is the engine; nothing here
schedules anything."""
