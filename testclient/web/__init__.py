"""The test client's page, served by `http_api` as it is: page.html (the shell; the server
fills in the escaped kvservice URL), page.css and page.js (which renders `/_results` with
`textContent`, never as HTML). Shipped as package data; no build step, nothing from a CDN."""
