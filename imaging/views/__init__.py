"""Staff pages for studies: worklist and upload, study page and actions, viewer."""
