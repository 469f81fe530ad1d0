"""Dataset generation (``generate``, ``hdf5_writer``), loading and sampling (``replay``, ``augment``)."""
