-- Styles in words for providers that cannot take a style name (GigaChat: the style's
-- system message, the only documented way to steer how it draws). The seed's three
-- named styles get one each, unless an operator has already written their own;
-- DEFAULT ("No style") stays without. Change one with:
--   UPDATE image_styles SET system_prompt = '...' WHERE name = 'ANIME';
UPDATE image_styles AS s
SET system_prompt = v.prompt
FROM (VALUES
    ('KANDINSKY', 'Ты художник-иллюстратор. Рисуй в манере Kandinsky: выразительная '
                  'живописная картина, насыщенные цвета, смелые мазки.'),
    ('UHD', 'Ты фотограф. Рисуй фотореалистичные изображения высокой чёткости: '
            'детальная фотография, естественный свет, резкий фокус.'),
    ('ANIME', 'Ты художник аниме. Рисуй в стиле японской анимации: чёткие контуры, '
              'яркие цвета, выразительные персонажи.')
) AS v (name, prompt)
WHERE s.name = v.name
  AND s.system_prompt IS NULL;
