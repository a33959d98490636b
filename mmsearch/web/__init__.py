"""Server-rendered pages for shoppers: search (text, photo, filters, facets), product pages."""
