"""Getting records to the tracking store: the writer, the uploader, the journal, the transport and its faults.

Nothing here knows Lightning or which run to use; it is given a run id and delivers, in order, exactly once.
"""
