"""Services: the runs service every interface calls."""
